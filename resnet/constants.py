"""Facts about CIFAR-10 that every part of the package shares (one place for each)."""

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

IMAGE_SIZE = 32
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # the official split

# Per-channel mean and standard deviation of the 50,000 training images, measured on the data
# (the often-copied std (0.2023, 0.1994, 0.2010) is not the data's std). Weight cards carry the
# constants a model was trained with; these are only the defaults for new runs.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

# What the published project normalized with (the widely copied values); its state_dict expects them.
PUBLISHED_MEAN = MEAN
PUBLISHED_STD = (0.2023, 0.1994, 0.2010)

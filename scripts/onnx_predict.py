"""Classify one image with an exported graph and onnxruntime alone: python scripts/onnx_predict.py model.onnx photo.jpg"""
import json
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
image = ImageOps.fit(ImageOps.exif_transpose(Image.open(sys.argv[2])).convert("RGB"), (32, 32), Image.Resampling.LANCZOS)
pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)[None]  # uint8 [1, 3, 32, 32]: normalization is in the graph
probabilities = session.run(["probabilities"], {"images": pixels})[0][0]
print(f"{classes[probabilities.argmax()]} {probabilities.max():.1%}")

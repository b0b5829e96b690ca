"""What only the server needs: its limits, the model catalog, the run queue, the HTTP API, the input guards,
the committed showcase, downloads, the model card's words, the handlers app.py wires to the page (with the Train
form's fields and the batch results they hand back) and the server's start.

This layer sits on the core (``resnet``) and the experiments; neither imports it."""

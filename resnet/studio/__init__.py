"""What only the server needs: its limits, the model catalog, the run queue, the HTTP API, the input guards,
the committed showcase, downloads, the model card's words and the handlers app.py wires to the page.

This layer sits on the core (``resnet``) and the experiments; neither imports it."""

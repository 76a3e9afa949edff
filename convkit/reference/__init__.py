"""The founding document's reference CNN: its canonical weights (``cnn``), training, the cross-framework
matrix and the demo."""

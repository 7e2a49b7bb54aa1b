"""PyTorch side of the pneumonia platform: decoding, models, training, checkpoints, inference.

Importable without Django (dependencies point diagnosis -> ml only). Submodules are imported
explicitly, e.g. `from ml.inference import Predictor`, so `import ml` itself stays cheap.
"""

"""The joint retrieval and deformation model (pure torch).

- ``geometry``: normalisation, batched part deformation, projection, chamfer.
- ``sources``: a library's sources as padded tensors.
- ``networks``: target encoders (PointNet, CNN), source encoder, retrieval and deformation heads.
- ``checkpoint``: saving and loading (state dict + JSON config, ``weights_only=True``).
"""

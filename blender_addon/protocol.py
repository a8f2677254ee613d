"""The wire protocol, shared with the backend: one module, two importers.

In the installed add-on the backend is bundled inside the add-on package;
in a development checkout it is the sibling ``backend`` package.
"""

try:
    from .backend.protocol import *  # noqa: F401,F403  (installed add-on)
    from .backend.protocol import Message, ProtocolError, encode, read_message, request, rotation_z, sample_surface  # noqa: F401
except ImportError:
    from backend.protocol import *  # noqa: F401,F403  (development checkout)
    from backend.protocol import Message, ProtocolError, encode, read_message, request, rotation_z, sample_surface  # noqa: F401

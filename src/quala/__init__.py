"""QuaLA: length-adaptive, quantized extractive question answering that runs fast on CPUs.

Stages, one module each: ``data -> model -> train -> search -> quantize -> evaluate -> serve``.
"""

__version__ = "0.1.0"

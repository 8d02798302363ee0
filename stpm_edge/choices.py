"""Choices shared by the library and its command lines. Importable without torch: the CLIs build
their parsers (and print ``--help``) before anything imports torch."""

COLOUR_MODES = ("texture", "aligned", "local")  # stpm_edge.colour_map
# what stpm-train --colour-map auto fits, and what stpm-colour and `quality colour` fit by default
DEFAULT_COLOUR_MODE = "local"
# --colour-gate-jpeg: the JPEG quality of the validation copies the colour map's gate is also set
# on (0 = none); why, in stpm_edge.colour_map (GATE_JPEG_QUALITY)
DEFAULT_COLOUR_GATE_JPEG = 90


# the Note: line of an error about it
GATE_JPEG_FIX = "90 suits compressed live frames; 0 suits lossless ones (stpm_edge.colour_map)"


def check_gate_jpeg(quality: int, flag: str = "--colour-gate-jpeg") -> int:
    """``quality`` if it is 0 or a JPEG quality (1-100), else a ``ValueError`` naming ``flag``
    (a config file may hold any value: ``"high"``, ``true``, ``95.5``)."""
    try:
        valid = not isinstance(quality, bool) and int(quality) == float(quality)
    except (TypeError, ValueError):
        valid = False
    if not valid or not 0 <= int(quality) <= 100:
        raise ValueError(f"{flag} {quality!r} is not a JPEG quality: use 1-100, or 0 for none")
    return int(quality)


AMP_CHOICES = ("auto", "bf16", "fp16", "off")  # stpm_edge.mixed_precision
HOST_MEMORY_CHOICES = ("retain", "system")  # stpm_edge.host_memory

"""Choices shared by the library and its command lines. Importable without torch: the CLIs build
their parsers (and print ``--help``) before anything imports torch."""

COLOUR_MODES = ("texture", "aligned", "local")  # stpm_edge.colour_map
# what stpm-train --colour-map auto fits, and what stpm-colour and `quality colour` fit by default
DEFAULT_COLOUR_MODE = "aligned"
AMP_CHOICES = ("auto", "bf16", "fp16", "off")  # stpm_edge.mixed_precision
HOST_MEMORY_CHOICES = ("retain", "system")  # stpm_edge.host_memory

"""Building blocks of the synthetic datasets (``stpm-data demo`` and ``stpm-data bench``).

``common`` holds what both builders share (photos, exact masks, PNG writing, output folder rules),
``textures`` renders photo-texture crops, ``parts`` renders industrial parts with pose and
lighting jitter, ``defects`` draws surface defects with exact masks.
"""

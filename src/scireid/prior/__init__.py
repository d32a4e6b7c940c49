"""The offline vision-language prior: a small CLIP pretrained on captioned synthetic people."""

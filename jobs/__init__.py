"""Ray entry points (`python -m jobs.<stage>`). The only package that imports ray."""

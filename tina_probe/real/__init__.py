"""Real pretrained bases: fetched and converted once into a cache folder outside the repository, found by name.

`real:NAME` (e.g. `real:smollm2-135m-instruct`) is how recipes and commands name such a base;
`resolve_model` turns it into the folder (building it on first use) and leaves any other value alone.
"""
from tina_probe.real.models import (KNOWN, RealBase, cache_root, ensure_base, is_real_name, model_dir,
                                    resolve_model)

__all__ = ["KNOWN", "RealBase", "cache_root", "ensure_base", "is_real_name", "model_dir", "resolve_model"]

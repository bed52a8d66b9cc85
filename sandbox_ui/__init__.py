"""Try-before-you-buy demos: a Gradio app built from each listing's manifest, at /try/{slug}."""

from .builder import build_demo
from .common import DemoCall, DemoSpec
from .mount import Lookup, TryApps, default_temp_dir
from .uploads import UploadLimits

__all__ = ["DemoCall", "DemoSpec", "Lookup", "TryApps", "UploadLimits", "build_demo",
           "default_temp_dir"]

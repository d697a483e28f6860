"""Teaching pieces of the customization guide that the generator itself does not use.

``SumProductRatio`` shows a layer with several inputs and outputs; ``Precision`` shows a
streaming metric with its own state. Both are registered as ``contrib.<name>`` so they
never take a name a user might want.
"""

from .layers import SumProductRatio
from .metrics import Precision

__all__ = ["SumProductRatio", "Precision"]

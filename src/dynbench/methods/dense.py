"""Dense: the unmodified backbone, the reference every method is measured against.

Not a dynamic method: one budget (1.0), no controller, every block on every token.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from dynbench.methods.base import DynamicModel, Method, register_method
from dynbench.models.backbone import Backbone
from dynbench.types import Budget, StepOutput


class DenseModel(DynamicModel):
    """The backbone as is; the budget is ignored."""

    def forward(self, inputs: Tensor, *, budget: Budget) -> StepOutput:
        """Dense forward pass with a full trace."""
        trace = self.backbone.dense_trace(inputs)
        return StepOutput(self.backbone(inputs), trace)


@register_method("dense")
class Dense(Method):
    """The reference: all of the backbone, always."""

    def wrap(self, backbone: Backbone) -> DenseModel:
        """Wrap without changes."""
        return DenseModel(backbone)

    budget_doc = "1.0 only"

    def budgets(self, n_blocks: int) -> Sequence[Budget]:
        """A single operating point."""
        return (1.0,)

    def resolve_budgets(self, override: Sequence[Budget] | None, n_blocks: int) -> tuple[Budget, ...]:
        """Dense has one operating point whatever budgets the suite asks the dynamic methods for."""
        return (1.0,)

"""Model slots (input layer, field, order, readout, ...) and the composite GeneralNeuralODE.

Importing this package registers every built-in slot variant.
"""

from nodex.models import fields, inputs, readouts  # noqa: F401  (registration)
from nodex.models.build import DataSpec, build_model, count_parameters
from nodex.models.neural_ode import ModelOutput, GeneralNeuralODE
from nodex.models import conv  # noqa: E402,F401  (registers field.kind=conv)
from nodex.models import cnf, control, horizon, integral  # noqa: E402,F401  (model.kind=cnf and the other slots)

__all__ = ["DataSpec", "ModelOutput", "GeneralNeuralODE", "build_model", "count_parameters"]

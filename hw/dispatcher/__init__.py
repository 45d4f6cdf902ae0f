"""The µTOp dispatcher and its parts (see dispatcher.Dispatcher)."""

from .dispatcher import Dispatcher
from .signatures import (COUNTERS, ContextConfigLayout, ContextStateLayout, ControlSignature,
                         EngineLinkSignature, engine_types)

__all__ = ["Dispatcher", "ControlSignature", "EngineLinkSignature", "ContextConfigLayout",
           "ContextStateLayout", "COUNTERS", "engine_types"]

"""Test helpers: a reference JupyterHub Outpost and a dummy single-user server.

:class:`ReferenceOutpost` is a real HTTP server that follows the Outpost wire
protocol; :class:`Fault` describes an injectable misbehaviour of it.
"""

from .faults import Fault, FaultPlan
from .outpost import ReferenceOutpost
from .records import RecordedRequest, ServiceRecord

__all__ = ["Fault", "FaultPlan", "RecordedRequest", "ReferenceOutpost", "ServiceRecord"]

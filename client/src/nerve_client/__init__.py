"""nerve-client: talk to a Nerve engine from a service that is not Nerve (a CRM, a backend).

`NerveClient` receives interest signals and publishes CRM events (`nerve_client.client`); the
wire models it validates with are the engine's own (`nerve_client.events`), and their JSON
Schemas ship as files (`nerve_client.schemas`). It needs nats-py and pydantic, nothing of the
engine's numerical stack; the engine imports these modules, never the other way round.
"""

from nerve_client.client import (
    CrmContact,
    InterestSignal,
    NerveClient,
    mint_identity_token,
    verify_identity_token,
)

__version__ = "0.1.0"
"""The same as the engine's (the root pyproject's `version`); a test keeps them equal."""

__all__ = [
    "CrmContact",
    "InterestSignal",
    "NerveClient",
    "__version__",
    "mint_identity_token",
    "verify_identity_token",
]

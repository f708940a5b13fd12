"""The pure privacy core: keys, pseudonyms, retention policy, consent rules and the split.

No Kafka, no faust, no clock reads, no I/O beyond reading the key and policy files: the
worker calls these once per batch and writes what they return.
"""

from streams.privacy.consent import (
    ConsentDecision,
    ConsentState,
    ConsentStatus,
    StateChange,
    batch_consent_keys,
    decide,
)
from streams.privacy.keyring import Keyring, write_new_keyring
from streams.privacy.pseudonymize import consent_keys, event_keys, subject_keys
from streams.privacy.retention import RetentionClass, RetentionPolicy, load_policy
from streams.privacy.split import Enrichment, SplitResult, split

__all__ = [
    "ConsentDecision",
    "ConsentState",
    "ConsentStatus",
    "Enrichment",
    "Keyring",
    "RetentionClass",
    "RetentionPolicy",
    "SplitResult",
    "StateChange",
    "batch_consent_keys",
    "consent_keys",
    "decide",
    "event_keys",
    "load_policy",
    "split",
    "subject_keys",
    "write_new_keyring",
]

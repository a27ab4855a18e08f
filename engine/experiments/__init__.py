"""Shadow and A/B experiments on live traffic: a challenger model beside a slot's active one.

* `spec`: what an experiment is (stored in the `registry` bucket, `experiment.<id>`), the stable
  assignment of a user to a variant, and starting, stopping and promoting one.
* `report`: the result per variant from decoded events, with intervals (pure, broker-free).
* `reading`: the scans of the streams that feed `report`, bounded to the experiment's time.

Serving (which model a user's list is computed with, the shadow list) is
`engine.recommender.experiments`.
"""

from engine.experiments.spec import (
    CHALLENGER,
    CONTROL,
    SHADOW_VARIANT,
    Experiment,
    ExperimentError,
    bucket_of,
    variant_of,
)

__all__ = [
    "CHALLENGER",
    "CONTROL",
    "SHADOW_VARIANT",
    "Experiment",
    "ExperimentError",
    "bucket_of",
    "variant_of",
]

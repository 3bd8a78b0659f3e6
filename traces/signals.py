"""What the span store tells the apps above it.

``spans_stored`` is sent inside the storing transaction, once per batch, with the rows that
were new (duplicates already dropped): ``team`` (a ``Team``), ``rows`` (dicts with the ``Span``
columns, ``cost`` included) and ``now``. A receiver that fails rolls the batch back, so what it
derives (cost rollups, for one) is never out of step with the spans.
"""

from __future__ import annotations

from django.dispatch import Signal

spans_stored = Signal()

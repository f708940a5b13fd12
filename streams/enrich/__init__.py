"""Enrichment: pure, deterministic functions from raw event fields to the coarse values the
anonymized facts keep (see ``schemas.arrow.FACTS``).

* :mod:`streams.enrich.useragent`: user agent -> browser family, OS family, device class, bot.
* :mod:`streams.enrich.geo`: IP address (or the client's own geo) -> ISO country code.

No Kafka, no clock, no network: the databases and rules ship inside installed packages.
"""

"""The stream processor: the faust worker and the raw-topic pipeline it hosts."""

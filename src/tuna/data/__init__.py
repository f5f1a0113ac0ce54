"""Data: readers, formats, rendering with loss masks, batching, and the generated tasks."""

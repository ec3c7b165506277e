"""Live processing: long-lived windows that stage new raw objects and refresh the units they
touched every refresh interval, each worker owning a share of the buckets."""

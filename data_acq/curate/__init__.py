"""Raw into what analysts use: staging, units, aggregates, the SQS feed, the warehouse, charts."""

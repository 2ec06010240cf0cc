"""Training data: clip shards (`shards`), subject extraction (`extract`), video preparation
(`prepare`) and region-aware dynamic masking (`masking`)."""

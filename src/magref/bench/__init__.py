"""The multi-subject benchmark: cases (`cases`), metrics (`metrics`), reports (`report`)."""

"""Training the embedded default model: the synthetic shapes domain and its captions."""

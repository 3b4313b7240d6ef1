"""Phase 3, evaluation: scores on the held-out test split and the reports drawn from them."""

"""bigrec: a BERT → LSTM → sigmoid recommender you drive from the shell."""

__version__ = "0.1.0"

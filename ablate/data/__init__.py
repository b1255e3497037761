"""The data a run trains and is evaluated on: the built-in synthetic language and its probe items,
the scorers that prove each probe isolates its skill, the sources (synthetic, files, Hugging Face),
tokenizers and the token cache, and the batch order."""

"""Compositions of stages: the jobs that need more than one stage's packages (training the RAG
reranker needs the index and the training loop); ``cli`` calls these."""

"""OpenAI's API family: chat and text completions, models, embeddings, rerank, audio."""

"""Stage 3, retrieval: the FAISS index over the catalogue, the Recommender that turns users into
top-k lists through it (the one inference path validation, evaluation, scoring and serving
share), and the ranking metrics those lists are judged by."""

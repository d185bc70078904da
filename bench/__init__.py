"""The comparative latency benchmark of the four combinations and the OpenAI front door (`matrix bench`)."""

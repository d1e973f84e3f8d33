"""Cloud providers the generation tasks are forwarded to (Google's Gemini API, OpenAI).

Kept free of imports: ahv.config imports `ahv.providers.config`, which must not pull in
aiohttp or the task modules."""

"""OpenAI-shaped chat messages -> token ids and pixel arrays, through mistral-common (the reference).

- `tokenizer.load_tokenizer`: the model folder's tekken.json, else mistral-common's packaged tekken_240911.json.
- `images.load_image`: data: URLs, paths, bytes, PIL images and http(s) URLs, as far as a `MediaPolicy` allows
  (the one place the rules for image sources live), size-checked before decoding.
- `chat.encode_chat`: messages -> `EncodedPrompt(token_ids, images)`.
- `detokenize.StreamingDetokenizer`: token ids -> text deltas that never split a UTF-8 character.
"""

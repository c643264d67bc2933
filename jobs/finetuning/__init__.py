"""The finetune stage's toolkit: datasets read into chats, chats into batches, the training loop."""

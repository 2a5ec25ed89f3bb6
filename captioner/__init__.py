"""tubelet captioning: VLM wrapper, prompts, caption QA, prompt upsampling."""

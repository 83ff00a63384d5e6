__version__ = "0.0.1"

import warnings
# fastai's own modules call `torch.jit.script` at import, which PyTorch >= 2.10 answers with a FutureWarning on every
# command and under every notebook cell that imports fastai. It is fastai's to fix; here it is silenced once, narrowly.
warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)

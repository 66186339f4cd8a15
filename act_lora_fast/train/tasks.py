"""What differs per kind of task, behind one interface the training loop and `compare` share.

A task object says how to load its data and model, build the datasets, compute a batch's loss, evaluate,
and which way its score points:

- `ClassificationTask` (a GLUE task): a sequence classifier, the model's own mean loss per batch, GLUE's
  metrics; the score is GLUE's (0-100), higher is better.
- `TextTask` (``task="text"``): a causal LM on a JSONL/txt file (`data.text`), the next-token loss summed
  over loss tokens and divided by the count over the whole optimizer step (all micro-batches, all ranks),
  so a step's gradient is the same however the batch is split; evaluation gives the mean token loss and
  perplexity; the score is the loss, lower is better.
"""
import statistics

from ..data.glue import GlueData, TokenizedDataset, check_texts, get_task, load_glue
from ..data.text import TEXT_TASK, TextData, TextDataset, load_text, loss_token_count, token_loss_sum
from ..measure.stats import chance_score
from ..model.hf import head_modules, load_causal_lm, load_classifier
from .evaluate import evaluate, evaluate_text


class ClassificationTask:
    """A GLUE task (or one shaped like it) on a sequence classifier."""
    token_weighted = False
    higher_is_better = True
    score_name = "score"

    def __init__(self, glue_task):
        self.glue = get_task(glue_task)
        self.name = self.glue.name

    def load_data(self, config):
        if not self.glue.folder:
            raise ValueError(f"task {self.name!r} has no GLUE files to load; pass its data")
        return load_glue(self.glue, config.data_dir, max_train_samples=config.max_train_samples,
                         max_eval_samples=config.max_eval_samples, seed=config.seed)

    def check_data(self, data):
        if not isinstance(data, GlueData):
            raise TypeError(f"data must be a GlueData, got {type(data).__name__}")
        check_texts(data.train, "training data")

    def load_model(self, config):
        return load_classifier(config.model, num_labels=self.glue.num_labels)

    def datasets(self, data, tokenizer, config):
        regression = self.glue.is_regression
        return (TokenizedDataset(data.train, tokenizer, config.max_seq_len, regression=regression),
                {name: TokenizedDataset(rows, tokenizer, config.max_seq_len, regression=regression)
                 for name, rows in data.eval.items()})

    def heads(self, model, config):
        """The modules trained in full: the classification head unless the config names others."""
        return head_modules(model, "auto" if config.modules_to_save is None else config.modules_to_save)

    @staticmethod
    def loss_items(batch):
        return 1

    @staticmethod
    def loss(model, batch):
        return model(**batch).loss

    def evaluate(self, model, eval_sets, **options):
        return evaluate(model, eval_sets, self.glue, **options)

    def chance_score(self, data):
        return statistics.fmean(chance_score(self.glue, [e.label for e in rows]) for rows in data.eval.values())


class TextTask:
    """Causal-LM fine-tuning on a text file: loss on the tokens the data marks (see `data.text`)."""
    name = TEXT_TASK
    token_weighted = True
    higher_is_better = False
    score_name = "eval loss"

    def load_data(self, config):
        return load_text(config.train_file, config.eval_file, eval_fraction=config.eval_fraction, seed=config.seed,
                         max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples)

    def check_data(self, data):
        if not isinstance(data, TextData):
            raise TypeError(f"data must be a TextData for task 'text', got {type(data).__name__}")

    def load_model(self, config):
        return load_causal_lm(config.model)

    def datasets(self, data, tokenizer, config):
        return (TextDataset(data.train, tokenizer, config.max_seq_len),
                {name: TextDataset(rows, tokenizer, config.max_seq_len) for name, rows in data.eval.items()})

    def heads(self, model, config):
        """Nothing trained in full unless the config names modules (a causal LM has no new head)."""
        return [] if config.modules_to_save is None else head_modules(model, config.modules_to_save)

    @staticmethod
    def loss_items(batch):
        return loss_token_count(batch["labels"])

    @staticmethod
    def loss(model, batch):
        """The summed next-token loss of the batch (the loop divides by the step's token count)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return token_loss_sum(logits, batch["labels"])[0]

    def evaluate(self, model, eval_sets, **options):
        return evaluate_text(model, eval_sets, **options)

    def chance_score(self, data):
        return None


def task_for(task):
    """The task object for a config's ``task``: "text", a GLUE task name or a `GlueTask`."""
    return TextTask() if task == TEXT_TASK else ClassificationTask(task)

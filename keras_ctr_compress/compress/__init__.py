"""keras_ctr_compress.compress"""

# `finetune` and `low_rank` shadow their modules' names on purpose: `compress.low_rank(model, ...)`.
from keras_ctr_compress.compress.field_importance import FieldPruningReport as FieldPruningReport
from keras_ctr_compress.compress.field_importance import drop_fields as drop_fields
from keras_ctr_compress.compress.field_importance import field_importance as field_importance
from keras_ctr_compress.compress.field_importance import model_field_names as model_field_names
from keras_ctr_compress.compress.field_importance import prune_fields as prune_fields
from keras_ctr_compress.compress.field_importance import select_fields as select_fields
from keras_ctr_compress.compress.finetune import finetune as finetune
from keras_ctr_compress.compress.low_rank import LowRankReport as LowRankReport
from keras_ctr_compress.compress.low_rank import compress_low_rank as compress_low_rank
from keras_ctr_compress.compress.low_rank import (
    fold_embedding_projections as fold_embedding_projections,
)
from keras_ctr_compress.compress.low_rank import low_rank as low_rank
from keras_ctr_compress.compress.low_rank import uniform_ranks as uniform_ranks
from keras_ctr_compress.compress.pruning import DeepLightPruning as DeepLightPruning
from keras_ctr_compress.compress.pruning import KeepSparsity as KeepSparsity
from keras_ctr_compress.compress.pruning import StructuredPruning as StructuredPruning
from keras_ctr_compress.compress.pruning import deeplight_sparsity as deeplight_sparsity
from keras_ctr_compress.compress.pruning import prune_deeplight as prune_deeplight
from keras_ctr_compress.compress.pruning import rebuild_model as rebuild_model
from keras_ctr_compress.compress.pruning import sparsity_file_savings as sparsity_file_savings
from keras_ctr_compress.compress.pruning import sparsity_report as sparsity_report
from keras_ctr_compress.compress.pruning import strip_pruning as strip_pruning
from keras_ctr_compress.compress.quantize import METHOD_PRESETS as METHOD_PRESETS
from keras_ctr_compress.compress.quantize import RowPriorityCallback as RowPriorityCallback
from keras_ctr_compress.compress.quantize import embedding_byte_cost as embedding_byte_cost
from keras_ctr_compress.compress.quantize import finalize_quantized as finalize_quantized
from keras_ctr_compress.compress.quantize import quantize_and_finetune as quantize_and_finetune
from keras_ctr_compress.compress.quantize import quantize_embeddings as quantize_embeddings
from keras_ctr_compress.compress.quantize import uniform_bits_budget as uniform_bits_budget
from keras_ctr_compress.compress.quantize import update_row_priorities as update_row_priorities
from keras_ctr_compress.compress.swap import replace_layers as replace_layers
from keras_ctr_compress.compress.user_model import allow_layer as allow_layer
from keras_ctr_compress.compress.user_model import as_reference_model as as_reference_model
from keras_ctr_compress.compress.user_model import check_supported as check_supported
from keras_ctr_compress.compress.user_model import inputs_from_ids as inputs_from_ids
from keras_ctr_compress.compress.user_model import with_user_inputs as with_user_inputs

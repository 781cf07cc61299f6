# tinker_loss.cmake — test_tinker_loss needs the Tinker library, which chord_all does not hold.
target_link_libraries(test_tinker_loss PRIVATE chord_tinker)

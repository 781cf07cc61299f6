"""make_corpus.py — writes corpus.txt, the text the embedded default tokenizer is trained on:
the built-in arithmetic task in the exact shapes server/train/task.c produces ("Compute 37+48."
and "37+48=85 \\boxed{85}", with + - * and negative answers), the words chat data around it uses
(ChatML roles, "The answer is"), and plain English so that free text does not fall apart into
bytes. Deterministic (fixed seed). Regenerate the tokenizer with:

    python3 server/model/default_tokenizer/make_corpus.py
    chordd tokenizer train --corpus server/model/default_tokenizer/corpus.txt \\
        --vocab-size 1024 --out server/model/default_tokenizer

and rebuild: the build embeds tokenizer.json and tokenizer_config.json (cmake/ChordEmbed.cmake).
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

ENGLISH = """\
You are a helpful assistant. Answer the question and put the final answer in \\boxed{}.
Compute the value of the expression. The answer is the number inside the box.
Let me think step by step. First, add the ones. Then carry the tens. The result is correct.
Solve the problem below. Show your work, then give the final answer.
The answer is 12. The answer is 7. The final answer is 100. So the answer is 45.
What is the sum of these numbers? What is the difference? What is the product?
We subtract the smaller number from the larger one, and the sign of the result is negative.
Multiply the first number by the second number and write the product.
Question: how many apples are left? Answer: there are three apples left.
The user asks a question, and the assistant answers it. The system gives instructions.
This is a small model for demonstrations and tests. It learns simple arithmetic quickly.
Training uses supervised fine-tuning on expert demonstrations and reinforcement learning.
A reward of one means the answer was right; a reward of zero means it was wrong.
The quick brown fox jumps over the lazy dog. Hello, world! How are you today?
It is a good idea to check your answer. If the answer is wrong, try again.
Numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 are digits. Ten plus ten is twenty.
In mathematics, addition, subtraction and multiplication are basic operations.
The model reads the prompt, writes a response, and stops at the end of its turn.
Please compute the following: Compute 12+34. Compute 56-78. Compute 9*8.
Think about the problem carefully before you answer. Explain your reasoning briefly.
"""

MORE = """\
Once upon a time, there was a little town by the sea. The people who lived there were fishermen
and farmers, and every morning they went to work before the sun came up. Children played on the
beach, and their parents told them stories about the old days, when the winters were long and
the summers were short. Everyone knew each other, and nobody ever locked their doors at night.
Science is the study of the natural world through observation and experiment. Scientists ask
questions, make predictions, and test them carefully. When the results do not match the
prediction, they change their ideas. This is how knowledge grows over time.
Computers follow instructions written by programmers. A program is a list of steps that tells
the machine what to do with data. Good programs are simple, correct and easy to read; they handle
errors instead of crashing, and they are tested before people depend on them.
The weather today is sunny with a light wind from the west. Tomorrow there may be rain in the
afternoon, so remember to bring an umbrella if you are going outside. Temperatures will stay
between ten and twenty degrees for the rest of the week.
History teaches us about the people who lived before us: their families, their work, their
wars and their discoveries. Some of the most important inventions were very simple, like the
wheel, paper, and the printing press, yet they changed the way everyone lived.
Learning a new language takes practice. Read every day, listen to people speak, and do not be
afraid of making mistakes. Over time, words that seemed strange become familiar, and you start
to think in the new language without translating.
Good health depends on sleep, food and exercise. Drink water, eat vegetables and fruit, walk
outside when you can, and rest when you are tired. Small habits, repeated every day, make a
large difference over many years.
A teacher explains the lesson, asks questions, and listens to the students. Students take
notes, solve exercises, and ask for help when something is not clear. Together they check the
answers and discuss why a solution works.
Music and art bring people together. A song can remind us of a place, a friend, or a moment
from long ago. Painting, drawing and writing let us share what we see and feel with others.
"""

ROLES = ["system", "user", "assistant"]


def problem(rng):
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(0, 999), rng.randint(2, 9)
        c = a * b
    else:
        a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        if rng.random() < 0.3:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
        c = a + b if op == "+" else a - b
    return f"Compute {a}{op}{b}.", f"{a}{op}{b}={c} \\boxed{{{c}}}", str(c)


def main():
    rng = random.Random(1234)
    lines = []
    for i in range(6000):
        p, r, c = problem(rng)
        lines.append(p)
        lines.append(r)
        if i % 5 == 0:
            lines.append(f"The answer is {c}.")
        if i % 50 == 0:
            role = ROLES[i // 50 % 3]
            lines.append(f"{role}\n{p}\n{role}\n{r}")
    for _ in range(20):
        lines.append(ENGLISH)
        lines.append(MORE)
    with open(os.path.join(HERE, "corpus.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

# The Dancer2 app of t/apps/lib/PSGIAppsDancer.pm as a PSGI app, as a
# Dancer2 project's bin/app.psgi has it.
use strict;
use warnings;
use Cwd ();
use File::Basename ();
use lib File::Basename::dirname(Cwd::abs_path(__FILE__)) . '/lib';
use PSGIAppsDancer;

PSGIAppsDancer->to_app;

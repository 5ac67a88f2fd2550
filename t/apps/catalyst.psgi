# The Catalyst app of t/apps/lib/PSGIAppsCat.pm as a PSGI app, as the
# .psgi file catalyst.pl generates has it.
use strict;
use warnings;
use Cwd ();
use File::Basename ();
use lib File::Basename::dirname(Cwd::abs_path(__FILE__)) . '/lib';
use PSGIAppsCat;

PSGIAppsCat->apply_default_middlewares(PSGIAppsCat->psgi_app);

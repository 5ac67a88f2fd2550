# The startup banner about groups (issue 13): with --workers above 1 and no
# --pubsub it warns that rooms and channels are per worker; a single process
# gets no such warning.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server ();    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(ROOT start_cli stop_cli stderr_of wait_until);

my $app = ROOT() . '/examples/01-hello-http/app.pl';
my $warning = qr/warn: groups \(rooms and channels\) are per worker: .*--pubsub/;

my $workers = start_cli([ $app, '--no-access-log', '--workers', 2 ], timeout => 20);
ok($workers->{ready}, '--workers 2 starts') or diag(stderr_of($workers));
ok(wait_until(sub { stderr_of($workers) =~ /2 workers ready/ }, 20), 'both workers are ready');
like(stderr_of($workers), $warning, '--workers 2 without --pubsub: the banner warns that groups are per worker');
is(stop_cli($workers, 20), 0, 'exit 0');

my $single = start_cli([ $app, '--no-access-log' ], timeout => 20);
ok($single->{ready}, 'a single process starts') or diag(stderr_of($single));
ok(wait_until(sub { stderr_of($single) =~ /listening on/ }, 10), 'its banner is out');
unlike(stderr_of($single), qr/per worker/, 'one process: no warning');
is(stop_cli($single, 20), 0, 'exit 0');

done_testing;

# The pid file and failed hot restarts (issue 9, item 11): bin/pagi-server
# as a child process. The pid file never follows a symlink planted at its
# path (it is replaced by a regular file; the link's target is untouched)
# and is owned by the --user; a USR2 whose new master cannot load the app,
# whose workers fail lifespan startup or whose workers crash at startup
# leaves the old master serving (a looping client sees no failure), its pid
# file intact, and the new master gone.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli http_raw slurp wait_until stderr_of);
use PAGI::Test::Workers qw(children_of alive);
use File::Temp ();
use POSIX ();
use Time::HiRes qw(time sleep);

$SIG{PIPE} = 'IGNORE';
my $dir = File::Temp->newdir('pagi-hot-XXXXXX', TMPDIR => 1);

sub write_file {
    my ($path, $content) = @_;
    open my $fh, '>', "$path.new" or die "write $path: $!";
    print {$fh} $content;
    close $fh;
    rename "$path.new", $path or die "rename $path: $!";
}

sub get {
    my ($port, $path) = @_;
    my ($r) = parse_responses(http_raw($port, "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
    return $r && defined $r->{status} ? $r : undef;
}

# The app answers with its pid; what its lifespan startup does is chosen
# when the file is written (the new master of a hot restart reads it anew).
my $app = "$dir/app.pl";
sub write_app {
    my ($startup) = @_;
    write_file($app, <<"PERL");
use strict; use warnings; use Future::AsyncAwait; use POSIX ();
my \$app = async sub {
    my (\$scope, \$receive, \$send) = \@_;
    if (\$scope->{type} eq 'lifespan') {
        while (1) {
            my \$ev = await \$receive->();
            if (\$ev->{type} eq 'lifespan.startup') {
                $startup
                await \$send->({ type => 'lifespan.startup.complete' });
            }
            else {
                await \$send->({ type => 'lifespan.shutdown.complete' });
                return;
            }
        }
    }
    await \$send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await \$send->({ type => 'http.response.body', body => "\$\$" });
};
\$app;
PERL
}

subtest 'a symlink at the pid file path is replaced, never followed' => sub {
    my $victim = "$dir/victim";
    write_file($victim, "precious\n");
    my $pid_file = "$dir/link.pid";
    symlink $victim, $pid_file or die "symlink: $!";
    my $missing = "$dir/not-created";
    my $dangling = "$dir/dangling.pid";
    symlink $missing, $dangling or die "symlink: $!";
    write_app('');

    for my $case ([ 'to an existing file', $pid_file ], [ 'dangling', $dangling ]) {
        my ($what, $path) = @$case;
        my $child = start_cli([ '--no-access-log', '--pid', $path, $app ]);
        ok($child->{ready} && wait_until(sub { get($child->{port}, '/') }, 10),
            "the server serves with a symlink $what at the pid path") or diag(stderr_of($child));
        ok(wait_until(sub { !-l $path && slurp($path) eq "$child->{pid}\n" }, 10),
            "the link was replaced by a regular file holding the pid ($what)")
            or diag(-l $path ? 'still a link' : slurp($path));
        is(slurp($victim), "precious\n", "the old link target is untouched ($what)");
        ok(!-e $missing, "a dangling link's target is not created ($what)");
        is(stop_cli($child), 0, "exit 0 ($what)");
        ok(!-e $path && !-l $path, "the pid file is removed at exit ($what)");
    }
    is(slurp($victim), "precious\n", 'the victim file still holds its content');
    is_deeply([ glob "$dir/*.tmp" ], [], 'no temporary file is left behind');
};

subtest 'the pid file is owned by --user' => sub {
    plan skip_all => 'needs root (to drop privileges)' unless $> == 0 || ($ENV{CI} // '') eq 'true';
    my @pw = getpwnam('nobody') or plan skip_all => 'no user nobody';
    my $pid_file = "$dir/owned.pid";
    write_app('');
    my $child = start_cli([ '--no-access-log', '--pid', $pid_file, '--user', 'nobody', $app ]);
    ok($child->{ready}, 'the server starts with --user nobody') or diag(stderr_of($child));
    ok(wait_until(sub { -s $pid_file }, 10), 'the pid file is written');
    my @st = lstat $pid_file;
    is($st[4], $pw[2], 'owned by nobody');
    is(slurp($pid_file), "$child->{pid}\n", 'naming the server');
    stop_cli($child);
};

# One old master for every failed hot restart below.
my $pid_file = "$dir/master.pid";
write_app('');
my $master = start_cli([ '--no-access-log', '--workers', 2, '--pid', $pid_file, $app ]);
ok($master->{ready}, 'the old master is up') or do { diag(stderr_of($master)); done_testing; exit };
my ($old, $port) = ($master->{pid}, $master->{port});
ok(wait_until(sub { slurp($pid_file) eq "$old\n" }, 10), 'the pid file names the old master');
ok(wait_until(sub { my @kids = children_of($old); @kids == 2 }, 15), 'with two workers');
my @old_workers = children_of($old);

# A process that sends requests back to back until TERM; it counts the
# successes and the failures.
sub start_looper {
    my $file = "$dir/looper." . int(rand 1e9);
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my ($stop, $ok, $fail, @errors) = (0, 0, 0);
        $SIG{TERM} = sub { $stop = 1 };
        until ($stop) {
            my $r = get($port, '/');
            last if $stop && !($r && $r->{status} == 200);    # the TERM cut this one short
            if ($r && $r->{status} == 200) { $ok++ } else { $fail++; push @errors, $r ? $r->{status} : 'none' }
        }
        open my $fh, '>', $file or POSIX::_exit(1);
        print {$fh} "ok=$ok fail=$fail errors=" . join(',', @errors[0 .. ($#errors < 4 ? $#errors : 4)]) . "\n";
        close $fh;
        POSIX::_exit(0);
    }
    return { pid => $pid, file => $file };
}

sub stop_looper {
    my ($looper) = @_;
    kill 'TERM', $looper->{pid};
    waitpid $looper->{pid}, 0;
    return { slurp($looper->{file}) =~ /(\w+)=(\S*)/g };
}

# New masters this file caused, stopped (with their workers) at the latest
# when it ends, should one outlive a failed test.
my @new_masters;
END {
    for my $pid (grep { alive($_) } @new_masters) {
        my @kids = children_of($pid);
        kill 'TERM', $pid;
        wait_until(sub { !alive($pid) }, 10);
        kill 'KILL', grep { alive($_) } $pid, @kids;
    }
}

my $failures = 0;
sub failed_hot_restart {
    my ($what, $startup_code, $broken_file) = @_;
    subtest "USR2 with $what: the old master keeps serving" => sub {
        if (defined $broken_file) { write_file($app, $broken_file) } else { write_app($startup_code) }
        my $looper = start_looper();
        sleep 0.3;    # the client is under way before the signal
        kill 'USR2', $old;
        $failures++;
        my $new;
        ok(wait_until(sub {
            my @seen = stderr_of($master) =~ /hot restart failed: the new master \(pid (\d+)\)/g;
            # Any other child of the old master is the new master.
            push @new_masters, grep { my $p = $_; !grep { $_ == $p } @old_workers, @new_masters } children_of($old);
            $new = $seen[-1] if @seen == $failures;
            defined $new;
        }, 30), 'the old master noticed the new master end') or diag(stderr_of($master));
        ok($new && wait_until(sub { !alive($new) }, 5), 'the new master is gone');
        sleep 0.3;
        my $r = stop_looper($looper);
        cmp_ok($r->{ok} // 0, '>', 0, "requests were served throughout ($r->{ok})");
        is($r->{fail}, 0, 'without a failure') or diag("errors: $r->{errors}");
        ok(alive($old), 'the old master is alive');
        is(slurp($pid_file), "$old\n", 'the pid file still names the old master');
        is_deeply([ children_of($old) ], \@old_workers, 'with its workers and no other child');
        my $res = get($port, '/');
        ok($res && grep({ $_ == $res->{body} } @old_workers), 'an old worker answers');
    };
}

failed_hot_restart('an app file that dies at load', undef, "die qq{broken on purpose\\n};\n");
failed_hot_restart('an app whose lifespan startup fails',
    q{await $send->({ type => 'lifespan.startup.failed', message => 'told to fail' }); return;});
failed_hot_restart('an app whose second worker crashes at startup',
    q{POSIX::_exit(3) if ($scope->{pagi}{worker_num} // 0) == 2;});
like(stderr_of($master), qr/worker 2 .*exit code 3/, 'the crash was reported')
  or diag(stderr_of($master));

write_app('');
is(stop_cli($master), 0, 'the old master stops on TERM with exit 0');
note(stderr_of($master));
ok(!-e $pid_file, 'and removes its pid file');

done_testing;

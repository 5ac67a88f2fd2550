# pagi-server --user with TLS and reuseport (issue 9, item 12), run as
# root: a throw-away user whose only tie to the key's group is a
# supplementary membership. The certificate and key are read before
# privileges are dropped (a root-only 0600 key works, single process and
# prefork), --user sets the user's supplementary groups (initgroups), so a
# root:GROUP 0640 key is readable by the server afterwards too, and
# --reuseport with --user serves from workers running as that user, or is
# refused up front, in one line, for a port the user may not bind.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server qw(parse_responses);    # its import sets the alarm bounding this file
use PAGI::Test::PKI;
use PAGI::Test::CLI qw(start_cli stop_cli run_cli http_raw slurp wait_until stderr_of);
use File::Temp ();
use IO::Socket::IP;
use POSIX ();

my $CI = ($ENV{CI} // '') eq 'true';
plan skip_all => 'needs root: it creates a user and a group and drops privileges to them' unless $> == 0;
sub missing {
    my ($why) = @_;
    if ($CI) { fail("CI=true and $why: ./setup.sh installs it"); done_testing; exit }
    plan skip_all => $why;
}
my %tool = map { my $t = $_; ($t => (grep { -x } map { "$_/$t" } split(/:/, $ENV{PATH} // ''), qw(/usr/sbin /sbin))[0]) }
    qw(openssl useradd userdel groupadd groupdel);
for my $t (sort keys %tool) { missing("the $t command is not installed") unless $tool{$t} }
missing('IO::Socket::SSL is not installed') unless eval { require IO::Socket::SSL; 1 };
$SIG{PIPE} = 'IGNORE';

my $dir = File::Temp->newdir('pagi-priv-XXXXXX', TMPDIR => 1);
chmod 0755, "$dir";

sub command {
    my ($name, @args) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        open STDIN, '<', '/dev/null';
        open STDOUT, '>>', "$dir/commands.log";
        open STDERR, '>&', \*STDOUT;
        exec $tool{$name}, @args or POSIX::_exit(127);
    }
    waitpid $pid, 0;
    return $? == 0;
}

# A group and a user that is a member of it only as a supplementary group
# (its primary group is another fresh one); both removed at the end.
my $tag = sprintf '%05d', $$ % 100000;
my ($user, $group, $primary) = ("pagiu$tag", "pagissl$tag", "pagipri$tag");
my $owner = $$;
my @made;
END {
    if ($$ == $owner) {
        command('userdel', $user) if grep { $_ eq 'user' } @made;
        command('groupdel', $_) for grep { $_ ne 'user' } reverse @made;
    }
}
for my $g ($primary, $group) {
    command('groupadd', '--system', $g) or BAIL_OUT("groupadd $g failed: " . slurp("$dir/commands.log"));
    push @made, $g;
}
command('useradd', '--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin',
    '--gid', $primary, '--groups', $group, $user) or BAIL_OUT("useradd failed: " . slurp("$dir/commands.log"));
push @made, 'user';
my ($uid, $primary_gid) = (getpwnam $user)[ 2, 3 ];
my $ssl_gid = getgrnam $group;
ok(defined $uid && defined $ssl_gid, "user $user (uid $uid) and group $group (gid $ssl_gid) exist");

# A CA and a server certificate for 127.0.0.1, in this test's directory.
my $pki = PAGI::Test::PKI->new(dir => $dir);
$pki->ca('ca', 'PAGI Priv CA');
$pki->leaf('server', '/CN=localhost', serial => 2);
chmod 0644, "$dir/server.pem", "$dir/ca.pem";
# The key as a distribution ships it for ssl-cert: root:GROUP 0640 ...
chown 0, $ssl_gid, "$dir/server.key" or die "chown: $!";
chmod 0640, "$dir/server.key";
# ... and a copy readable by root alone.
{
    open my $in, '<', "$dir/server.key" or die $!;
    sysopen my $out, "$dir/root-only.key", POSIX::O_WRONLY() | POSIX::O_CREAT() | POSIX::O_EXCL(), 0600 or die $!;
    print {$out} do { local $/; <$in> };
    close $out;
}

# The app reports who serves: real and effective uid, gid and the groups.
my $app = "$dir/app.pl";
{
    open my $fh, '>', $app or die $!;
    print {$fh} <<'PERL';
use strict; use warnings; use Future::AsyncAwait;
my $app = async sub {
    my ($scope, $receive, $send) = @_;
    die "Unsupported scope type: $scope->{type}\n" unless $scope->{type} eq 'http';
    my $body = "uid=$< euid=$> gid=" . (0 + $() . " groups=" . join(',', split ' ', $)) . " pid=$$";
    await $send->({ type => 'http.response.start', status => 200, headers => [ [ 'content-type', 'text/plain' ] ] });
    await $send->({ type => 'http.response.body', body => $body });
};
$app;
PERL
    close $fh;
}
chmod 0644, $app;

# One HTTPS GET verified against the test CA → the parsed response or undef.
sub tls_get {
    my ($port) = @_;
    my $sock = IO::Socket::SSL->new(
        PeerHost => '127.0.0.1', PeerPort => $port, Timeout => 5,
        SSL_ca_file => "$dir/ca.pem", SSL_verifycn_name => 'localhost', SSL_verifycn_scheme => 'http',
    ) or return undef;
    print {$sock} "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    local $/;
    my $raw = <$sock> // '';
    my ($r) = parse_responses($raw);
    return $r && defined $r->{status} ? $r : undef;
}

sub plain_get {
    my ($port) = @_;
    my ($r) = parse_responses(http_raw($port, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
    return $r && defined $r->{status} ? $r : undef;
}

sub field { my ($r, $name) = @_; ($r && $r->{body} // '') =~ /(?:^| )$name=(\S*)/ ? $1 : undef }

sub served_as_user {
    my ($r, $label) = @_;
    is($r && $r->{status}, 200, "$label: 200 over TLS") or return;
    is(field($r, 'uid'), $uid, "$label: real uid is $user");
    is(field($r, 'euid'), $uid, "$label: effective uid is $user");
    is(field($r, 'gid'), $primary_gid, "$label: gid is the user's primary group");
    my %groups = map { $_ => 1 } split /,/, field($r, 'groups') // '';
    ok($groups{$ssl_gid}, "$label: the supplementary group $group is set (initgroups)") or diag($r->{body});
    ok(!$groups{0}, "$label: root's group is gone");
}

for my $case (
    [ 'root:GROUP 0640 key, single process', "$dir/server.key" ],
    [ 'root-only 0600 key, single process',  "$dir/root-only.key" ],
    [ 'root-only 0600 key, two workers',     "$dir/root-only.key", '--workers', 2 ],
) {
    my ($label, $key, @extra) = @$case;
    subtest "--user with TLS: $label" => sub {
        my $child = start_cli([ '--no-access-log', '--user', $user, '--ssl-cert', "$dir/server.pem", '--ssl-key', $key, @extra, $app ]);
        ok($child->{ready}, 'pagi-server is up') or return diag(stderr_of($child));
        my $r;
        ok(wait_until(sub { $r = tls_get($child->{port}) }, 15), 'an HTTPS request is answered') or diag(stderr_of($child));
        served_as_user($r, $label);
        unlike(stderr_of($child), qr/cannot read|Permission denied/, 'no read error logged');
        is(stop_cli($child), 0, 'exit 0 on TERM');
    };
}

# True when $user can read every file the re-executed pagi-server needs
# (a hot restart runs as the user): the tree, the app and the cert.
sub user_can_read {
    my @paths = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        POSIX::setgid($primary_gid);
        POSIX::setuid($uid);
        POSIX::_exit((grep { !-r $_ } @paths) ? 1 : 0);
    }
    waitpid $pid, 0;
    return $? == 0;
}

subtest 'USR2 as --user: the new master rereads a root:GROUP 0640 key and takes over the pid file' => sub {
    my $root = PAGI::Test::CLI::ROOT();
    plan skip_all => "$user cannot read the distribution under $root, so a hot restart (re-executed as $user) cannot run here"
        unless user_can_read("$root/bin/pagi-server", "$root/lib/PAGI/Server.pm", glob("$root/blib/arch/auto/PAGI/Server/Native/Native.so"), $app);
    # The directory is root's: the pid file can only be rewritten in place.
    my $pid_file = "$dir/hot.pid";
    my $child = start_cli([ '--no-access-log', '--workers', 2, '--user', $user, '--pid', $pid_file,
        '--ssl-cert', "$dir/server.pem", '--ssl-key', "$dir/server.key", $app ]);
    ok($child->{ready}, 'pagi-server is up') or return diag(stderr_of($child));
    my $old = $child->{pid};
    ok(wait_until(sub { slurp($pid_file) eq "$old\n" }, 10), 'the pid file names the master');
    is((lstat $pid_file)[4], $uid, "and is owned by $user");
    ok(wait_until(sub { tls_get($child->{port}) }, 15), 'an HTTPS request is answered');
    kill 'USR2', $old;
    my $new;
    ok(wait_until(sub { ($new) = slurp($pid_file) =~ /\A(\d+)\n\z/; $new && $new != $old }, 30),
        'the pid file names the new master') or diag(stderr_of($child));
    ok(wait_until(sub { PAGI::Test::CLI::_exited($child) }, 30), 'the old master exited') or diag(stderr_of($child));
    my $r;
    ok(wait_until(sub { $r = tls_get($child->{port}) }, 15), 'HTTPS is served after the take-over');
    served_as_user($r, 'after USR2');
    unlike(stderr_of($child), qr/hot restart failed|cannot read|Permission denied/, 'no failure logged') or diag(stderr_of($child));
    if ($new) {
        kill 'TERM', $new;
        ok(wait_until(sub { !kill 0, $new }, 15), 'the new master stops on TERM');
        kill 'KILL', $new if kill 0, $new;
    }
};

# A TCP port below 1024 that root can bind now (the user cannot).
sub free_low_port {
    for my $port (reverse 900 .. 1023) {
        my $s = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => $port, Listen => 1, ReuseAddr => 1) or next;
        close $s;
        return $port;
    }
    return undef;
}

# Two reuseport workers serving as $user, each from its own socket.
sub reuseport_workers_serve_as_user {
    my (%start) = @_;
    my $child = start_cli([ '--no-access-log', '--workers', 2, '--reuseport', '--user', $user, $app ], %start);
    ok($child->{ready}, 'pagi-server is up') or return diag(stderr_of($child));
    my %pids;
    ok(wait_until(sub {
        my $r = plain_get($child->{port});
        $pids{ field($r, 'pid') } = field($r, 'euid') if $r && $r->{status} == 200;
        keys %pids == 2;
    }, 20), 'both workers answer') or diag(stderr_of($child));
    is_deeply([ sort values %pids ], [ $uid, $uid ], "each as $user");
    is(stop_cli($child), 0, 'exit 0 on TERM');
}

subtest '--reuseport with --user: workers bind as the user and serve' => sub { reuseport_workers_serve_as_user() };

subtest '--reuseport with --user on a port below 1024: the master binds the slots before the drop' => sub {
    my $low = free_low_port();
    ok($low, 'a free port below 1024') or return;
    reuseport_workers_serve_as_user(port => $low);
};

done_testing;

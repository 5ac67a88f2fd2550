package PAGI::Server::Reload;
use strict;
use warnings;

our $VERSION = '0.01';

use File::Find ();
use POSIX ();
use Time::HiRes ();

=head1 NAME

PAGI::Server::Reload - restart pagi-server when source files change (--reload)

=head1 SYNOPSIS

    exit PAGI::Server::Reload->supervise(
        command => [ $^X, '/usr/bin/pagi-server', @ARGV ],
        dir     => '/srv/app',
        grace   => 32,
    );

=head1 DESCRIPTION

Internal to L<PAGI::Server::Runner>, for development. The supervising
process loads no app code and opens no socket: it runs the real server as a
child (the same command with C<PAGI_RELOAD_CHILD=1> in its environment),
polls the modification times of the C<.pl>, C<.pm>, C<.psgi> and C<.pagi>
files under C<dir> every 0.5 s (skipping dot-directories, C<blib>,
C<local> and C<node_modules>), and on a change stops the child gracefully
and starts a new one. Polling needs no extra module and works on every
file system.

If the first child fails to start (exit code 2, for example a busy port),
the supervisor exits with that code. A later failure, such as a syntax
error just saved, is reported and the next change starts the server again.
TERM, INT and QUIT stop the child and then the supervisor; HUP restarts the
child.

=head1 METHODS

=head2 supervise

Returns the exit code for the process.

=cut

my $INTERVAL = 0.5;
my $MAX_FILES = 20_000;

sub supervise {
    my ($class, %o) = @_;
    my $say = sub { warn "[pagi-server reload] $_[0]\n" unless $o{quiet} };
    my ($stop, $restart);
    local $SIG{TERM} = sub { $stop = 'TERM' };
    local $SIG{INT}  = sub { $stop = 'INT' };
    local $SIG{QUIT} = sub { $stop = 'QUIT' };
    local $SIG{HUP}  = sub { $restart = 'SIGHUP' };
    $say->("watching $o{dir} for changes");
    my %seen = _scan($o{dir});
    my $child = _spawn($o{command});
    my $first = 1;
    while (1) {
        Time::HiRes::sleep($INTERVAL);
        if ($stop) {
            my $status = _stop($child, $o{grace});
            return defined $status && !($status & 127) ? $status >> 8 : 0;
        }
        if ($child && waitpid($child, POSIX::WNOHANG()) == $child) {
            my $status = $?;
            $child = undef;
            my $code = $status >> 8;
            return $code if $first && $code == 2 && !($status & 127);
            $say->('the server exited (' . ($status & 127 ? 'signal ' . ($status & 127) : "exit code $code")
                . '); waiting for a change');
        }
        my %now = _scan($o{dir});
        my $changed = $restart // _changed(\%seen, \%now);
        next unless defined $changed;
        undef $restart;
        %seen = %now;
        $first = 0;
        $say->("$changed changed; restarting");
        _stop($child, $o{grace}) if $child;
        $child = _spawn($o{command});
    }
}

sub _spawn {
    my ($command) = @_;
    STDOUT->flush;
    STDERR->flush;
    my $pid = fork;
    return undef unless defined $pid;
    return $pid if $pid;
    $ENV{PAGI_RELOAD_CHILD} = 1;
    $SIG{$_} = 'DEFAULT' for qw(TERM INT QUIT HUP);
    { exec { $command->[0] } @$command }
    POSIX::_exit(127);
}

# TERM, wait up to $grace seconds, then KILL. Returns the wait status.
sub _stop {
    my ($pid, $grace) = @_;
    return undef unless $pid;
    kill 'TERM', $pid;
    my $deadline = Time::HiRes::time() + $grace;
    while (Time::HiRes::time() < $deadline) {
        return $? if waitpid($pid, POSIX::WNOHANG()) == $pid;
        Time::HiRes::sleep(0.05);
    }
    kill 'KILL', $pid;
    waitpid $pid, 0;
    return $?;
}

# path => "mtime size" for every watched file.
sub _scan {
    my ($dir) = @_;
    my %files;
    File::Find::find({
        no_chdir   => 1,
        preprocess => sub { grep { !/\A\./ && !/\A(?:blib|local|node_modules)\z/ || !-d "$File::Find::dir/$_" } @_ },
        wanted     => sub {
            return if keys %files >= $MAX_FILES;
            return unless /\.(?:pl|pm|psgi|pagi)\z/ && -f $_;
            my @st = Time::HiRes::stat($_);
            $files{$_} = "$st[9] $st[7]" if @st;
        },
    }, $dir) if -d $dir;
    return %files;
}

sub _changed {
    my ($old, $new) = @_;
    for my $file (sort keys %$new) {
        return $file if !exists $old->{$file} || $old->{$file} ne $new->{$file};
    }
    for my $file (sort keys %$old) {
        return $file unless exists $new->{$file};
    }
    return undef;
}

1;

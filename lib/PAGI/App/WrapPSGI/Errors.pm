package PAGI::App::WrapPSGI::Errors;
use strict;
use warnings;

our $VERSION = '0.01';

use Symbol ();

=head1 NAME

PAGI::App::WrapPSGI::Errors - psgi.errors that writes to the server's log

=head1 SYNOPSIS

    my $errors = PAGI::App::WrapPSGI::Errors->handle;
    $errors->print("something odd\n");     # a warn, in the server's log
    print {$errors} "so is this\n";

=head1 DESCRIPTION

The C<psgi.errors> of L<PAGI::App::WrapPSGI>: a glob tied to this class, so
both method calls (C<print>, C<printf>, C<say>, C<write>) and the built-ins
on it work. Every write becomes one C<warn> (with a newline added when it
has none), which is how a PAGI server's log is reached: L<PAGI::Server> logs
through C<warn>, and C<$SIG{__WARN__}> handlers see each line.

=head2 handle

Returns the handle (one per process is enough: it holds no state).

=cut

sub handle {
    my ($class) = @_;
    my $glob = Symbol::gensym();
    tie *$glob, $class;
    return $glob;
}

sub TIEHANDLE { my ($class) = @_; return bless {}, $class }

sub _emit {
    my ($text) = @_;
    return 1 unless defined $text && length $text;
    $text .= "\n" unless $text =~ /\n\z/;
    warn $text;
    return 1;
}

sub PRINT {
    my $self = shift;
    no warnings 'uninitialized';
    return _emit(join($, // '', @_) . ($\ // ''));
}

sub PRINTF {
    my $self = shift;
    my $format = shift;
    return _emit(sprintf $format, @_);
}

sub WRITE {
    my ($self, $buffer, $length, $offset) = @_;
    $offset //= 0;
    $length //= length($buffer) - $offset;
    _emit(substr $buffer, $offset, $length);
    return $length;
}

sub CLOSE   { 1 }
sub BINMODE { 1 }
sub FILENO  { undef }
sub EOF     { 1 }
sub READ    { 0 }
sub READLINE { return }

1;
